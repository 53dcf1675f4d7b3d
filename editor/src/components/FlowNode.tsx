import { createContext, memo, useContext } from "react";
import { Handle, Position, type NodeProps } from "@xyflow/react";
import { counterKey, counters } from "../lib/counters";
import { useKeyed } from "../lib/store";
import { nodeErrors, nodeWarnings, shortMessage } from "../lib/validation";
import { COUNTER_H, HEADER_H, INPUT_HANDLE, NODE_W, PORT_H, nodeHeight, type MwNode } from "../lib/graph";

/** The id of the flow on the canvas (counters are keyed ``flow/node``). */
export const FlowIdContext = createContext("");

const KIND_COLOR: Record<string, string> = {
  source: "bg-emerald-100",
  sink: "bg-amber-100",
  pure: "bg-sky-100",
};

/** Counters live in a keyed store this component alone subscribes to: a counter update
 *  re-renders one node, never the canvas. */
function NodeCounters({ id }: { id: string }) {
  const flow = useContext(FlowIdContext);
  const c = useKeyed(counters, counterKey(flow, id));
  return (
    <div data-testid={`node-counter-${id}`} style={{ height: COUNTER_H }} className="truncate px-2 font-mono text-[10px] leading-4 text-slate-500">
      {c ? (
        <>
          in {c.in} · out {c.out}
          {c.errors > 0 && <span className="text-red-600"> · err {c.errors}</span>}
          {c.dropped > 0 && <span className="text-amber-700"> · drop {c.dropped}</span>}
        </>
      ) : (
        "not running"
      )}
    </div>
  );
}

function NodeErrors({ id }: { id: string }) {
  const errs = useKeyed(nodeErrors, id);
  const warns = useKeyed(nodeWarnings, id);
  if (!errs?.length) {
    if (!warns?.length) return null;
    return (
      <div data-testid="validation-warning" title={warns.map((w) => w.message).join("\n")} className="w-[220px] truncate rounded border border-amber-200 bg-amber-50 px-2 py-0.5 text-[10px] text-amber-800">
        {warns[0]!.message}
      </div>
    );
  }
  const text = errs.map((e) => (e.param ? `${e.param}: ${shortMessage(e)}` : e.message)).join("\n");
  return (
    <div data-testid="validation-error" title={text} className="w-[220px] truncate rounded border border-red-200 bg-red-50 px-2 py-0.5 text-[10px] text-red-700">
      ⚠ {errs[0]!.param ? `${errs[0]!.param}: ` : ""}
      {errs[0]!.line !== undefined ? `line ${errs[0]!.line}: ` : ""}
      {shortMessage(errs[0]!)}
      {errs.length > 1 ? ` (+${errs.length - 1})` : ""}
    </div>
  );
}

/** Fixed geometry (see ``nodeGeometry``): React Flow knows every node's size and handles
 *  before it is drawn, so only the nodes on screen are ever rendered. */
function FlowNodeView({ id, data, selected }: NodeProps<MwNode>) {
  return (
    <div
      style={{ width: NODE_W, height: nodeHeight(data.ports.length) }}
      className={`relative rounded-md border bg-white text-xs shadow-sm ${selected ? "border-sky-500 ring-2 ring-sky-300" : "border-slate-300"} ${data.extra["disabled"] === true ? "opacity-60" : ""}`}
    >
      {data.hasInput && <Handle type="target" position={Position.Left} id={INPUT_HANDLE} />}
      <div style={{ height: HEADER_H }} className={`overflow-hidden rounded-t-md px-2 py-1 leading-4 ${KIND_COLOR[data.kind]}`}>
        <div className="truncate font-semibold text-slate-800">{data.name || id}</div>
        <div className="truncate text-[10px] leading-[14px] text-slate-500">
          {data.extra["disabled"] === true && <span className="mr-1 rounded bg-slate-600 px-1 text-white">disabled</span>}
          {data.type}
          {data.name ? ` · ${id}` : ""}
        </div>
      </div>
      <NodeCounters id={id} />
      {data.ports.map((p) => (
        <div key={p} style={{ height: PORT_H }} className={`relative pr-3 text-right text-[10px] leading-[14px] ${p === "error" ? "text-red-600" : "text-slate-600"}`}>
          {p}
          <Handle type="source" position={Position.Right} id={p} className={p === "error" ? "mw-error-port" : undefined} />
        </div>
      ))}
      <div className="absolute top-full left-0 mt-0.5">
        <NodeErrors id={id} />
      </div>
    </div>
  );
}

export const FlowNode = memo(FlowNodeView);
export const nodeTypes = { mw: FlowNode };
