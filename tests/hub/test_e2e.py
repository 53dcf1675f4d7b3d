"""The hub and real edges as separate processes: deploy to a tag, rollback, and every
message exactly once at the hub through outages, restarts and kill -9."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from mechaway.testing.daemon import DaemonProc

from .harness import (
    HubProc,
    Proxy,
    check_exactly_once,
    edge,
    flow,
    wait_for,
)


def _runs(d: DaemonProc, fid: str, name: str | None = None) -> bool:
    f = d.status()["flows"].get(fid)
    if f is None:
        return False
    return name is None or f.get("name") == name


def _drained(hub: HubProc, dev: str) -> int | None:
    """The edge's last seq once the hub holds everything it produced, else None."""
    view = hub.ok("GET", f"/devices/{dev}")
    backlog = view["backlog"]
    if not backlog or backlog.get("messages") != 0:
        return None
    last = int(backlog["last_seq"])
    uploads = [u for u in view["uploads"] if not u["retired"]]
    if not uploads or uploads[-1]["acked"] != last:
        return None
    return last


def _problems(d: DaemonProc) -> list[str]:
    return list(d.status()["problems"])


def test_fleet_deploy_and_exactly_once(tmp_path: Path, database: str) -> None:
    pg = database.startswith("postgresql://")
    key = tmp_path / "signing.key"
    hubs = [HubProc(tmp_path / "hub1", database, key=key)]
    if pg:  # two hub processes on one database: the edges reach different ones
        hubs.append(HubProc(tmp_path / "hub2", database, key=key))
    procs: list[Any] = []
    proxy = None
    try:
        for h in hubs:
            h.start()
            procs.append(h)
        hub1, hub_last = hubs[0], hubs[-1]
        proxy = Proxy([h.port for h in hubs])
        pk = hub1.public_key()
        assert hub_last.public_key() == pk
        tok_a = hub1.add_device("edge-a", ["gh"])
        tok_b = hub1.add_device("edge-b", ["gh"])
        a = edge(tmp_path / "a", "edge-a", hub_last.url, tok_a, public_key=pk)
        b = edge(tmp_path / "b", "edge-b", proxy.url, tok_b, public_key=pk)
        for d in (a, b):
            d.start()
            procs.append(d)

        # deploy to the tag: both edges run it, the hub sees it
        hub1.ok("PUT", "/tags/gh/flows/tel", flow("tel"))
        for d in (a, b):
            d.wait(lambda d=d: _runs(d, "tel"), 15, "the tag's flow to run")
        for dev in ("edge-a", "edge-b"):
            wait_for(
                lambda dev=dev: any(
                    f["id"] == "tel" and f["hub"] and f["state"] == "running"
                    for f in hubs[-1].ok("GET", f"/devices/{dev}")["flows"]
                ),
                15,
                f"{dev}'s heartbeat to report the flow",
            )

        # edge b offline while it produces: refused, black-holed, slow, cut mid-batch
        proxy.set("drop")
        b.wait(lambda: any(p.startswith("hub:") for p in _problems(b)), 20, "a hub problem")
        proxy.set("blackhole")
        time.sleep(3)
        proxy.set("delay")
        time.sleep(1.5)
        proxy.cut_bytes = 250  # inside the body of a batch (and of a heartbeat)
        proxy.set("cut")
        wait_for(lambda: proxy.cuts >= 3, 20, "requests cut mid-body")
        proxy.set("pass")
        b.wait(lambda: not any(p.startswith("hub:") for p in _problems(b)), 30, "sync back")

        # the hub restarted (killed) while b uploads a backlog
        proxy.set("blackhole")
        time.sleep(2)
        proxy.set("pass")
        time.sleep(0.3)
        hub1.kill9()
        time.sleep(1)
        hub1.start()

        # edge a killed with SIGKILL while it uploads a backlog, then started again
        if pg:
            hub_last.stop()  # a's hub away: a backlog builds
        else:
            hub1.stop()
        time.sleep(2)
        (hub_last if pg else hub1).start()
        time.sleep(0.3)
        a.kill9()
        a.start()

        # stop producing, let both drain, count at the hub
        hub1.ok("DELETE", "/tags/gh/flows/tel")
        for d in (a, b):
            d.wait(lambda d=d: not _runs(d, "tel"), 20, "the flow to be removed")
        for dev in ("edge-a", "edge-b"):
            last = wait_for(lambda dev=dev: _drained(hub1, dev), 60, f"{dev} to drain")
            assert last > 100, f"{dev} produced only {last} messages"
            check_exactly_once(hub1.telemetry(dev), last, dev)
            if pg:  # the other hub process reads the same
                assert len(hub_last.telemetry(dev)) == last
        assert b.status()["hub"]["acked_upto"] == _drained(hub1, "edge-b")
    finally:
        if proxy is not None:
            proxy.close()
        for p in reversed(procs):
            p.kill9()


def _bad_flow(fid: str) -> dict[str, Any]:
    """Inject -> a Lua node that raises on every message."""
    return {
        "id": fid,
        "name": "bad",
        "nodes": [
            {"id": "tick", "type": "InjectNode", "params": {"interval": 0.05}},
            {"id": "boom", "type": "FunLogicNode",
             "params": {"engine": "lua", "script": "error('boom')"}},
        ],
        "edges": [{"from": "tick", "to": "boom"}],
    }  # fmt: skip


def _revisions(d: DaemonProc) -> list[dict[str, Any]]:
    """Flow f's recorded revisions ([] until the first is recorded: status shows a flow
    running a moment before its revision is in the store)."""
    code, body = d.api("GET", "/flows/f/revisions")
    return list(body) if code == 200 else []


def _events(hub: HubProc, dev: str, kind: str) -> list[dict[str, Any]]:
    return [e for e in hub.ok("GET", f"/devices/{dev}")["events"] if e["kind"] == kind]


def test_bad_revision_rolled_back(tmp_path: Path, database: str) -> None:
    hub = HubProc(tmp_path / "hub", database)
    d = None
    try:
        hub.start()
        tok = hub.add_device("edge-r", [])
        d = edge(tmp_path / "r", "edge-r", hub.url, tok, public_key=hub.public_key())
        d.start()
        good = flow("f", 0.5, name="good")
        hub.ok("PUT", "/devices/edge-r/flows/f", good)
        d.wait(lambda: _runs(d, "f", "good"), 15, "the good revision")
        good_rev = d.wait(lambda: _revisions(d), 10, "the revision to be recorded")[-1]["rev"]

        # a revision whose node errors past the threshold: back to the good one
        hub.ok("PUT", "/devices/edge-r/flows/f", _bad_flow("f"))
        d.wait(
            lambda: [r["source"] for r in _revisions(d)][-2:]
            == ["hub", "rollback"],  # the bad revision ran (from the hub), then rolled back
            20,
            "the rollback to be recorded",
        )
        assert _runs(d, "f", "good")
        wait_for(lambda: _events(hub, "edge-r", "rolled_back"), 15, "the rollback report")
        ev = _events(hub, "edge-r", "rolled_back")[0]
        assert ev["flow"] == "f" and f"back to rev {good_rev}" in ev["detail"]
        time.sleep(3)  # the same bad document is not deployed again at the next bundle
        assert _runs(d, "f", "good")

        # a revision that fails to start: the running one stays, failure reported
        broken = flow("f", 0.5, name="broken")
        broken["nodes"][0]["type"] = "NoSuchNode"
        hub.ok("PUT", "/devices/edge-r/flows/f", broken)
        wait_for(lambda: _events(hub, "edge-r", "failed"), 15, "the failure report")
        assert "keeps running" in _events(hub, "edge-r", "failed")[0]["detail"]
        assert _runs(d, "f", "good")
    finally:
        if d is not None:
            d.kill9()
        hub.kill9()
