import { memo, useState, useSyncExternalStore } from "react";
import { debugLog, type Live } from "../lib/live";
import type { MwNode } from "../lib/graph";

function short(v: unknown): string {
  const s = typeof v === "string" ? v : JSON.stringify(v);
  return s === undefined ? "undefined" : s.length > 300 ? `${s.slice(0, 300)}…` : s;
}

/** Debug messages from LogNodes: pause, a per-node filter, a cap on what is kept. */
function DebugPanelView({ live, flowId, logNodes }: { live: Live | null; flowId: string; logNodes: MwNode[] }) {
  useSyncExternalStore(debugLog.subscribe, debugLog.getVersion);
  const [open, setOpen] = useState(true);
  const [paused, setPaused] = useState(false);
  const [picked, setPicked] = useState<Set<string>>(new Set());
  const [cap, setCap] = useState(debugLog.cap);
  const entries = debugLog.entries;
  const toggle = (nid: string) => {
    const next = new Set(picked);
    if (next.has(nid)) next.delete(nid);
    else next.add(nid);
    setPicked(next);
    live?.setDebugFilter(next.size ? [...next].map((n) => `${flowId}/${n}`) : null);
  };
  const shown = picked.size ? entries.filter((e) => e.flow === flowId && picked.has(e.node)) : entries;
  return (
    <section data-testid="debug-panel" className={`flex shrink-0 flex-col border-t border-slate-200 bg-white ${open ? "h-44" : "h-8"}`}>
      <div className="flex items-center gap-3 px-3 py-1 text-xs">
        <button className="font-semibold" onClick={() => setOpen(!open)}>
          {open ? "▾" : "▸"} Debug ({entries.length})
        </button>
        <button
          data-testid="debug-pause"
          className="rounded border border-slate-300 px-2"
          onClick={() => {
            setPaused(!paused);
            debugLog.paused = !paused;
            live?.setDebugPaused(!paused);
          }}
        >
          {paused ? "resume" : "pause"}
        </button>
        <label>
          keep{" "}
          <select
            data-testid="debug-cap"
            value={cap}
            onChange={(e) => {
              setCap(Number(e.target.value));
              debugLog.setCap(Number(e.target.value));
            }}
          >
            {[100, 500, 2000].map((n) => (
              <option key={n}>{n}</option>
            ))}
          </select>
        </label>
        <button className="text-slate-500 hover:text-slate-800" onClick={() => debugLog.clear()}>
          clear
        </button>
        <span className="text-slate-400">only:</span>
        {logNodes.map((n) => (
          <label key={n.id} className="flex items-center gap-1">
            <input type="checkbox" data-testid={`debug-filter-${n.id}`} checked={picked.has(n.id)} onChange={() => toggle(n.id)} />
            {n.id}
          </label>
        ))}
      </div>
      {open && (
        <div className="flex-1 overflow-y-auto px-3 font-mono text-[11px]">
          {shown
            .slice(-200)
            .reverse()
            .map((e) => (
              <div key={e.seq} data-testid="debug-entry" className="border-b border-slate-100 py-0.5">
                <span className="text-slate-400">{new Date(e.ts * 1000).toLocaleTimeString()}</span>{" "}
                <span className="text-sky-700">
                  {e.flow}/{e.node}
                </span>{" "}
                {short(e.value)}
              </div>
            ))}
        </div>
      )}
    </section>
  );
}

export const DebugPanel = memo(DebugPanelView);
