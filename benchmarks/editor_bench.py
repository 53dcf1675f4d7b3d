"""The browser editor's figures, printed as one JSON line.

- ``load_to_interactive_20_nodes_ms`` / ``..._1000_nodes_ms``: navigation start to the
  canvas showing the flow's nodes plus two painted frames (logged in already), median of
  ``--repeat`` loads in a fresh tab each.
- ``pan_frame_ms_p50/p95/max`` (1,000-node flow): intervals between animation frames
  while the mouse drags the canvas (60 Hz: 16.7 ms when no frame is missed).
- ``bundle_gzip_kb`` (all files, gzip -9) and ``initial_gzip_kb`` (what the first load
  fetches: the Lua code editor is loaded only when a script is opened).
- ``flow_msgs_per_s``: the rate the load flow reached (InjectNode at 20,000/s target);
  ``ws_counter_updates_per_s``: counter batches one editor received meanwhile.
- ``daemon_cpu_pct_*``, ``daemon_rss_mb_*``: the daemon with no editor and with one open
  on the busy flow (CPU % of one core over ``--window`` seconds).

Chromium is Debian's (/usr/bin/chromium), never a downloaded one.
Run: python benchmarks/editor_bench.py [--repeat 3] [--window 10]
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "editor"))
from _util import compile_package, cpu_seconds, rss_mb
from browser import launch, open_editor  # type: ignore[import-not-found]
from playwright.sync_api import Browser, Page, sync_playwright

from mechaway.testing.daemon import DaemonProc

ROOT = Path(__file__).resolve().parent.parent

TOKEN = "bench-token"
DIST = ROOT / "mechaway" / "api" / "editor_dist"

# set at document start: the time the canvas first shows nodes, two frames later
PROBE = """
(() => {
  const check = () => {
    if (document.querySelector('.react-flow__node')) {
      requestAnimationFrame(() => requestAnimationFrame(() => {
        window.__interactive = performance.now();
      }));
    } else requestAnimationFrame(check);
  };
  requestAnimationFrame(check);
})();
"""


def chains(fid: str, n_chains: int, length: int) -> dict[str, Any]:
    """``n_chains`` rows of InjectNode -> ChangeNodes -> LogNode, laid out on a grid."""
    nodes: list[dict[str, Any]] = []
    edges: list[dict[str, str]] = []
    for c in range(n_chains):
        ids = [f"c{c}n{i}" for i in range(length)]
        for i, nid in enumerate(ids):
            if i == 0:
                spec: dict[str, Any] = {"type": "InjectNode", "params": {"interval": 3600}}
            elif i == length - 1:
                spec = {"type": "LogNode", "params": {"level": "debug"}}
            else:
                spec = {
                    "type": "ChangeNode",
                    "params": {"rules": [{"op": "set", "path": "topic", "value": nid}]},
                }
            nodes.append({"id": nid, **spec, "ui": {"x": 40 + i * 240, "y": 40 + c * 140}})
        edges += [{"from": a, "to": b} for a, b in itertools.pairwise(ids)]
    return {"id": fid, "name": fid, "nodes": nodes, "edges": edges}


#: one InjectNode reaches some 9,000 msg/s (one event-loop turn per message): several share
#: the target rate
SOURCES = 8


def busy_flow(rate: float) -> dict[str, Any]:
    srcs = [
        {"id": f"src{i}", "type": "InjectNode", "params": {"interval": SOURCES / rate}}
        for i in range(SOURCES)
    ]
    return {
        "id": "busy",
        "nodes": [
            *srcs,
            {
                "id": "mark",
                "type": "ChangeNode",
                "params": {"rules": [{"op": "set", "path": "topic", "value": "t"}]},
            },
            {"id": "limit", "type": "RateLimitNode", "params": {"rate": 1}},
        ],
        "edges": [
            *({"from": s["id"], "to": "mark"} for s in srcs),
            {"from": "mark", "to": "limit"},
        ],
    }


def put(d: DaemonProc, doc: dict[str, Any]) -> None:
    code, body = d.api("PUT", f"/flows/{doc['id']}", doc)
    assert code in (200, 201), body


def load_time(browser: Browser, d: DaemonProc, fid: str, n: int) -> tuple[float, Page]:
    """Milliseconds from navigation to the flow's nodes painted, and the tab."""
    page = open_editor(browser, "about:blank", TOKEN)
    page.add_init_script(PROBE)
    page.goto(f"{d.url}/#flow={fid}")
    deadline = time.monotonic() + 60
    while (ms := page.evaluate("window.__interactive ?? null")) is None:
        assert time.monotonic() < deadline, f"{fid}: the canvas never showed a node"
        time.sleep(0.05)
    shown = page.locator(".react-flow__node").count()
    assert shown > 0, f"{fid}: no node shown"
    assert n < 50 or shown < n, f"{fid}: {shown} of {n} nodes rendered (culling off?)"
    return ms, page


def pan_frames(page: Page) -> list[float]:
    page.evaluate(
        """() => { window.__frames = []; let last = performance.now();
        const tick = (t) => { window.__frames.push(t - last); last = t;
          if (window.__panning) requestAnimationFrame(tick); };
        window.__panning = true; requestAnimationFrame(tick); }"""
    )
    box = page.get_by_test_id("canvas").bounding_box()
    assert box is not None
    # grab the pane between two rows of nodes, drag left and up, then back
    x0, y0 = box["x"] + box["width"] - 60, box["y"] + 110
    page.mouse.move(x0, y0)
    page.mouse.down()
    for i in range(1, 121):
        page.mouse.move(x0 - i * 6, y0 + (i % 40) * 2)
    for i in range(120, 0, -1):
        page.mouse.move(x0 - i * 6, y0 - (i % 40) * 2)
    page.mouse.up()
    frames: list[float] = page.evaluate("window.__panning = false; window.__frames.slice(1)")
    return frames


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def daemon_load(d: DaemonProc, window: float) -> tuple[float, float, float]:
    """(CPU % of one core, RSS MB, flow msgs/s) over ``window`` seconds."""
    assert d.proc is not None
    pid = d.proc.pid

    def sent() -> int:
        fs = d.flow_status("busy")
        assert fs is not None
        out: int = fs["nodes"]["mark"]["in"]
        return out

    c0, m0, t0 = cpu_seconds(pid), sent(), time.monotonic()
    time.sleep(window)
    c1, m1, t1 = cpu_seconds(pid), sent(), time.monotonic()
    return 100 * (c1 - c0) / (t1 - t0), rss_mb(pid), (m1 - m0) / (t1 - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--window", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=20_000)
    args = ap.parse_args()
    compile_package()

    files = [p for p in DIST.rglob("*") if p.is_file()]
    gz = {p: len(gzip.compress(p.read_bytes(), 9)) for p in files}
    initial = sum(v for p, v in gz.items() if "LuaEditor" not in p.name)

    out: dict[str, Any] = {
        "bundle_gzip_kb": round(sum(gz.values()) / 1024, 1),
        "initial_gzip_kb": round(initial / 1024, 1),
    }
    with tempfile.TemporaryDirectory() as tmp:
        d = DaemonProc(Path(tmp), token=TOKEN)
        d.start()
        try:
            put(d, chains("small", 2, 10))
            put(d, chains("big", 50, 20))
            with sync_playwright() as pw:
                browser = launch(pw)
                try:
                    for fid, n in (("small", 20), ("big", 1000)):
                        times = []
                        for _ in range(args.repeat):
                            ms, page = load_time(browser, d, fid, n)
                            times.append(ms)
                            if fid == "big" and len(times) == args.repeat:
                                frames: list[float] = []
                                for _ in range(args.repeat):
                                    frames += pan_frames(page)
                                out["pan_frame_ms_p50"] = round(statistics.median(frames), 1)
                                out["pan_frame_ms_p95"] = round(pct(frames, 0.95), 1)
                                out["pan_frame_ms_max"] = round(max(frames), 1)
                                out["pan_frames"] = len(frames)
                            page.context.close()
                        out[f"load_to_interactive_{n}_nodes_ms"] = round(statistics.median(times))
                        out[f"load_to_interactive_{n}_nodes_ms_range"] = [
                            round(min(times)),
                            round(max(times)),
                        ]

                    put(d, busy_flow(args.rate))
                    time.sleep(2)
                    cpu0, rss0, rate0 = daemon_load(d, args.window)
                    page = open_editor(browser, f"{d.url}/#flow=busy", TOKEN)
                    page.get_by_test_id("node-counter-mark").wait_for()
                    time.sleep(2)
                    n0 = page.evaluate("window.__mechaway.live.received.counters ?? 0")
                    t0 = time.monotonic()
                    cpu1, rss1, rate1 = daemon_load(d, args.window)
                    n1 = page.evaluate("window.__mechaway.live.received.counters ?? 0")
                    ws_rate = (n1 - n0) / (time.monotonic() - t0)
                    page.context.close()
                finally:
                    browser.close()
        finally:
            d.kill()
    out.update(
        {
            "flow_msgs_per_s": round((rate0 + rate1) / 2),
            "ws_counter_updates_per_s": round(ws_rate, 1),
            "daemon_cpu_pct_no_editor": round(cpu0, 1),
            "daemon_cpu_pct_editor_open": round(cpu1, 1),
            "daemon_cpu_pct_delta": round(cpu1 - cpu0, 1),
            "daemon_rss_mb_no_editor": round(rss0, 1),
            "daemon_rss_mb_editor_open": round(rss1, 1),
        }
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
