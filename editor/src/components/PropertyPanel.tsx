import { memo, useEffect, useMemo, useState } from "react";
import { formFields, setIn } from "../lib/schema";
import type { MwNode } from "../lib/graph";
import type { TypeMeta, ValidationError } from "../lib/types";
import { useKeyed } from "../lib/store";
import { nodeErrors } from "../lib/validation";
import { ParamForm } from "./ParamForm";

interface NodePanelProps {
  node: MwNode;
  meta: TypeMeta | undefined;
  onParams: (id: string, params: Record<string, unknown>, key: string) => void;
  onRename: (id: string, newId: string) => string | null;
  onName: (id: string, name: string) => void;
}

function NodePanelView({ node, meta, onParams, onRename, onName }: NodePanelProps) {
  const fields = useMemo(() => (meta ? formFields(meta.schema) : []), [meta]);
  const errors = useKeyed(nodeErrors, node.id) ?? [];
  const [idDraft, setIdDraft] = useState(node.id);
  const [idError, setIdError] = useState<string | null>(null);
  useEffect(() => {
    setIdDraft(node.id);
    setIdError(null);
  }, [node.id]);
  const known = new Set(fields.map((f) => f.name));
  const loose = errors.filter((e) => !e.param || !known.has(e.param));
  return (
    <div className="space-y-3 p-3" data-testid="node-panel">
      <div>
        <div className="text-xs text-slate-500">{node.data.type}</div>
        {meta?.description && <p className="text-xs text-slate-600">{meta.description.replace(/``/g, "")}</p>}
        {!meta && <p className="text-xs text-red-600">unknown node type on this daemon</p>}
      </div>
      <label className="block text-sm">
        <span className="font-medium text-slate-700">id</span>
        <input
          data-testid="node-id"
          className="w-full rounded border border-slate-300 px-2 py-1 text-sm"
          value={idDraft}
          onChange={(e) => setIdDraft(e.target.value)}
          onBlur={() => setIdError(idDraft === node.id ? null : onRename(node.id, idDraft))}
          onKeyDown={(e) => {
            if (e.key === "Enter") (e.target as HTMLInputElement).blur();
          }}
        />
        {idError && <span className="text-[11px] text-red-600">{idError}</span>}
      </label>
      <label className="block text-sm">
        <span className="font-medium text-slate-700">name</span>
        <input data-testid="node-name" className="w-full rounded border border-slate-300 px-2 py-1 text-sm" value={node.data.name} onChange={(e) => onName(node.id, e.target.value)} />
      </label>
      {loose.length > 0 && (
        <ul className="rounded border border-red-200 bg-red-50 p-2 text-[11px] text-red-700">
          {loose.map((e, i) => (
            <li key={i}>
              {e.where}: {e.message}
            </li>
          ))}
        </ul>
      )}
      <h4 className="border-b border-slate-200 pb-1 text-xs font-semibold tracking-wide text-slate-500 uppercase">Params</h4>
      <ParamForm
        fields={fields}
        value={node.data.params}
        errors={errors}
        onChange={(path, v) => onParams(node.id, setIn(node.data.params, path, v) as Record<string, unknown>, path.join("."))}
      />
      <p className="text-[11px] text-slate-500">ports: {node.data.ports.join(", ")}</p>
    </div>
  );
}

export const NodePanel = memo(NodePanelView);

interface FlowPanelProps {
  id: string;
  name: string;
  isNew: boolean;
  source: string | null;
  file?: string;
  errors: ValidationError[];
  count: number;
  onId: (id: string) => void;
  onName: (name: string) => void;
}

export function FlowPanel({ id, name, isNew, source, file, errors, count, onId, onName }: FlowPanelProps) {
  return (
    <div className="space-y-3 p-3" data-testid="flow-panel">
      <h3 className="text-sm font-semibold">Flow</h3>
      <label className="block text-sm">
        <span className="font-medium text-slate-700">id</span>
        <input data-testid="flow-id" disabled={!isNew} className="w-full rounded border border-slate-300 px-2 py-1 text-sm disabled:bg-slate-100" value={id} onChange={(e) => onId(e.target.value)} />
      </label>
      <label className="block text-sm">
        <span className="font-medium text-slate-700">name</span>
        <input data-testid="flow-name" className="w-full rounded border border-slate-300 px-2 py-1 text-sm" value={name} onChange={(e) => onName(e.target.value)} />
      </label>
      <p className="text-xs text-slate-500">
        {count} nodes · {isNew ? "not deployed yet" : `deployed from ${source}${file ? ` (${file})` : ""}`}
      </p>
      {errors.length > 0 && (
        <ul className="rounded border border-red-200 bg-red-50 p-2 text-[11px] text-red-700" data-testid="flow-errors">
          {errors.map((e, i) => (
            <li key={i}>
              {e.where ? `${e.where}: ` : ""}
              {e.message}
            </li>
          ))}
        </ul>
      )}
      <p className="text-[11px] text-slate-500">
        Drag node types from the palette; wire an output port to an input. Delete removes the selection; Ctrl+Z/Ctrl+Shift+Z undo and redo; Ctrl+C/Ctrl+V copy and paste.
      </p>
    </div>
  );
}
