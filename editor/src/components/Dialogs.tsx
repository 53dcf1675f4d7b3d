import { useEffect, type ReactNode } from "react";
import type { FlowChanges } from "../lib/diff";
import { isEmpty } from "../lib/diff";
import type { Revision } from "../lib/api";
import type { FlowDoc } from "../lib/types";

export function Modal({ title, children, onClose, testid }: { title: string; children: ReactNode; onClose: () => void; testid: string }) {
  useEffect(() => {
    const onKey = (e: KeyboardEvent) => e.key === "Escape" && onClose();
    window.addEventListener("keydown", onKey);
    return () => window.removeEventListener("keydown", onKey);
  }, [onClose]);
  return (
    <div className="fixed inset-0 z-50 flex items-center justify-center bg-slate-900/30" onMouseDown={(e) => e.target === e.currentTarget && onClose()}>
      <div data-testid={testid} role="dialog" aria-label={title} className="max-h-[85vh] w-[560px] overflow-y-auto rounded-lg bg-white p-5 shadow-xl">
        <div className="mb-3 flex items-center justify-between">
          <h2 className="text-base font-semibold">{title}</h2>
          <button className="text-slate-400 hover:text-slate-700" onClick={onClose} aria-label="close">
            ✕
          </button>
        </div>
        {children}
      </div>
    </div>
  );
}

const btn = "rounded px-3 py-1.5 text-sm";
export const primaryBtn = `${btn} bg-sky-600 text-white hover:bg-sky-700 disabled:opacity-50`;
export const plainBtn = `${btn} border border-slate-300 bg-white hover:bg-slate-50`;
export const dangerBtn = `${btn} bg-red-600 text-white hover:bg-red-700`;

export function ChangesView({ changes }: { changes: FlowChanges }) {
  if (isEmpty(changes)) return <p className="text-sm text-slate-500" data-testid="diff-empty">No changes.</p>;
  const row = (label: string, cls: string, items: string[], testid: string) =>
    items.length > 0 && (
      <li data-testid={testid} className="text-sm">
        <span className={`mr-2 inline-block w-24 font-medium ${cls}`}>{label}</span>
        {items.join(", ")}
      </li>
    );
  return (
    <ul className="space-y-1" data-testid="diff">
      {row("added", "text-emerald-700", changes.added, "diff-added")}
      {row("removed", "text-red-700", changes.removed, "diff-removed")}
      {row("changed", "text-amber-700", changes.changed.map((c) => `${c.id} (${c.fields.join(", ")})`), "diff-changed")}
      {row("moved only", "text-slate-500", changes.moved, "diff-moved")}
      {row("wires +", "text-emerald-700", changes.edgesAdded.map((e) => `${e.from}.${e.port ?? "out"} → ${e.to}`), "diff-edges-added")}
      {row("wires −", "text-red-700", changes.edgesRemoved.map((e) => `${e.from}.${e.port ?? "out"} → ${e.to}`), "diff-edges-removed")}
      {row("flow", "text-amber-700", changes.flow, "diff-flow")}
    </ul>
  );
}

export function DeployDialog({ changes, rev, flowId, onConfirm, onClose, busy }: { changes: FlowChanges; rev: number | null; flowId: string; onConfirm: () => void; onClose: () => void; busy: boolean }) {
  return (
    <Modal title={`Deploy ${flowId}`} onClose={onClose} testid="deploy-dialog">
      <p className="mb-2 text-xs text-slate-500">{rev === null ? "A new flow." : `Against revision ${rev} (the one this editor loaded).`}</p>
      <ChangesView changes={changes} />
      <div className="mt-4 flex justify-end gap-2">
        <button className={plainBtn} onClick={onClose}>
          Cancel
        </button>
        <button className={primaryBtn} data-testid="deploy-confirm" disabled={busy} onClick={onConfirm}>
          Deploy
        </button>
      </div>
    </Modal>
  );
}

export function ConflictDialog(props: {
  message: string;
  currentRev: number | null;
  review: FlowChanges | null;
  onReview: () => void;
  onOverwrite: () => void;
  onReload: () => void;
  onClose: () => void;
}) {
  const { message, currentRev, review } = props;
  return (
    <Modal title={currentRev !== null ? "Deployed meanwhile" : "Not deployed"} onClose={props.onClose} testid="conflict-dialog">
      <p className="mb-2 text-sm" data-testid="conflict-message">
        {message}
      </p>
      {currentRev !== null && <p className="mb-3 text-xs text-slate-500">The daemon now runs revision {currentRev}.</p>}
      {review && (
        <div className="mb-3 rounded border border-slate-200 p-2">
          <p className="mb-1 text-xs text-slate-500">What your version changes against the one running now{currentRev !== null ? ` (revision ${currentRev})` : ""}:</p>
          <ChangesView changes={review} />
        </div>
      )}
      <div className="flex justify-end gap-2">
        <button className={plainBtn} data-testid="conflict-review" onClick={props.onReview}>
          Review
        </button>
        {currentRev !== null && (
          <button className={dangerBtn} data-testid="conflict-overwrite" onClick={props.onOverwrite}>
            Overwrite
          </button>
        )}
        <button className={primaryBtn} data-testid="conflict-reload" onClick={props.onReload}>
          Reload theirs
        </button>
      </div>
    </Modal>
  );
}

function when(t: number | string): string {
  const d = typeof t === "number" ? new Date(t * 1000) : new Date(t);
  return Number.isNaN(d.getTime()) ? String(t) : d.toLocaleString();
}

export function HistoryDialog({ revisions, onRollback, onClose }: { revisions: Revision[] | null; onRollback: (rev: number) => void; onClose: () => void }) {
  return (
    <Modal title="Revision history" onClose={onClose} testid="history-dialog">
      {revisions === null ? (
        <p className="text-sm text-slate-500">Loading…</p>
      ) : (
        <table className="w-full text-sm">
          <thead>
            <tr className="text-left text-xs text-slate-500">
              <th>rev</th>
              <th>source</th>
              <th>deployed</th>
              <th />
            </tr>
          </thead>
          <tbody>
            {[...revisions].reverse().map((r) => (
              <tr key={r.rev} data-testid={`revision-${r.rev}`} className="border-t border-slate-100">
                <td className="py-1 font-mono">{r.rev}</td>
                <td>{r.source}</td>
                <td className="text-xs">{when(r.created_at)}</td>
                <td className="text-right">
                  {r.active ? (
                    <span className="text-xs text-emerald-700">active</span>
                  ) : (
                    <button className="text-xs text-sky-700 hover:underline" data-testid={`rollback-${r.rev}`} onClick={() => onRollback(r.rev)}>
                      roll back to this
                    </button>
                  )}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </Modal>
  );
}

export interface ImportReportItem {
  node?: string;
  type?: string;
  problem?: string;
  [k: string]: unknown;
}

export function ImportDialog({ flows, report, config, onOpen, onClose }: { flows: FlowDoc[]; report: ImportReportItem[]; config: string; onOpen: (doc: FlowDoc) => void; onClose: () => void }) {
  return (
    <Modal title="Node-RED import" onClose={onClose} testid="import-dialog">
      <h3 className="mb-1 text-sm font-semibold">Flows ({flows.length})</h3>
      <ul className="mb-3 space-y-1">
        {flows.map((f) => (
          <li key={f.id} className="flex items-center justify-between text-sm">
            <span>
              <span className="font-mono">{f.id}</span> {f.name && <span className="text-slate-500">“{f.name}”</span>} · {f.nodes.length} nodes, {(f.edges ?? []).length} wires
            </span>
            <button className="text-sky-700 hover:underline" data-testid={`import-open-${f.id}`} onClick={() => onOpen(f)}>
              open for review
            </button>
          </li>
        ))}
      </ul>
      <h3 className="mb-1 text-sm font-semibold">Report ({report.length})</h3>
      {report.length === 0 ? (
        <p className="text-sm text-slate-500">Everything was mapped.</p>
      ) : (
        <ul className="space-y-1 text-sm" data-testid="import-report">
          {report.map((r, i) => (
            <li key={i} data-testid="import-report-item" className="rounded bg-amber-50 px-2 py-1">
              <span className="font-mono">{r.node ?? "?"}</span> <span className="text-slate-500">({r.type ?? "?"})</span>: {r.problem ?? JSON.stringify(r)}
            </li>
          ))}
        </ul>
      )}
      {config.trim() && (
        <>
          <h3 className="mt-3 mb-1 text-sm font-semibold">Connections for mechaway.toml</h3>
          <pre data-testid="import-config" className="overflow-x-auto rounded bg-slate-100 p-2 text-[11px]">
            {config}
          </pre>
        </>
      )}
      <p className="mt-3 text-xs text-slate-500">Nothing is deployed yet: open a flow, check it, then deploy it.</p>
    </Modal>
  );
}
