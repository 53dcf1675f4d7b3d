/** The canvas graph (React Flow nodes/edges) <-> the flow document; cycle checks; layout. */
import { Position, type Edge, type Node } from "@xyflow/react";
import type { FlowDoc, FlowEdgeDoc, FlowMeta, FlowNodeDoc, TypeMeta } from "./types";
import { portsFor } from "./schema";

export interface MwNodeData extends Record<string, unknown> {
  type: string;
  params: Record<string, unknown>;
  name: string;
  kind: "source" | "pure" | "sink";
  ports: string[];
  hasInput: boolean;
  /** keys of the node document the editor does not edit, kept as they were */
  extra: Record<string, unknown>;
  /** the node's ``ui`` keys besides x/y (an importer's notes...), kept as they were */
  uiExtra: Record<string, unknown>;
}

export type MwNode = Node<MwNodeData, "mw">;
export type MwEdge = Edge;

export const INPUT_HANDLE = "in";

// -- node geometry (FlowNode draws exactly this) --------------------------------------------
export const NODE_W = 180;
export const HEADER_H = 38;
export const COUNTER_H = 16;
export const PORT_H = 14;
const BORDER = 1;
const BOTTOM = 4;
const HANDLE = 9;

export function nodeHeight(ports: number): number {
  return 2 * BORDER + HEADER_H + COUNTER_H + ports * PORT_H + BOTTOM;
}

/** Size and handle boxes of a node, given before it is drawn: React Flow can then cull
 *  nodes off screen from the first frame instead of drawing all of them to measure them. */
export function nodeGeometry(ports: readonly string[], hasInput: boolean) {
  const height = nodeHeight(ports.length);
  const handles: { id: string; type: "source" | "target"; position: Position; x: number; y: number; width: number; height: number }[] = [];
  if (hasInput) {
    handles.push({ id: INPUT_HANDLE, type: "target", position: Position.Left, x: -HANDLE / 2, y: height / 2 - HANDLE / 2, width: HANDLE, height: HANDLE });
  }
  ports.forEach((p, i) => {
    const cy = BORDER + HEADER_H + COUNTER_H + i * PORT_H + PORT_H / 2;
    handles.push({ id: p, type: "source", position: Position.Right, x: NODE_W - BORDER - HANDLE / 2, y: cy - HANDLE / 2, width: HANDLE, height: HANDLE });
  });
  // ``measured`` too: React Flow counts a node as initialised (fitView waits for that) only
  // once measured, and a node culled off screen is never measured
  return { width: NODE_W, height, measured: { width: NODE_W, height }, handles };
}

export function edgeId(from: string, port: string, to: string): string {
  return `${from}:${port}->${to}`;
}

/** Would an edge ``from -> to`` close a loop? (a self-loop counts) */
export function wouldCycle(edges: readonly { source: string; target: string }[], from: string, to: string): boolean {
  if (from === to) return true;
  const out = new Map<string, string[]>();
  for (const e of edges) {
    const list = out.get(e.source);
    if (list) list.push(e.target);
    else out.set(e.source, [e.target]);
  }
  // is ``from`` reachable from ``to``?
  const seen = new Set<string>([to]);
  const stack = [to];
  while (stack.length) {
    const n = stack.pop()!;
    for (const m of out.get(n) ?? []) {
      if (m === from) return true;
      if (!seen.has(m)) {
        seen.add(m);
        stack.push(m);
      }
    }
  }
  return false;
}

export interface WireCheck {
  ok: boolean;
  reason?: string;
}

/** The checks made while a wire is drawn: the port exists, the target takes input, no
 *  duplicate, no cycle. */
export function checkWire(
  nodes: readonly MwNode[] | ReadonlyMap<string, MwNode>,
  edges: readonly MwEdge[],
  from: string,
  port: string | null | undefined,
  to: string,
): WireCheck {
  const get = (id: string) =>
    nodes instanceof Map ? nodes.get(id) : (nodes as readonly MwNode[]).find((n) => n.id === id);
  const src = get(from);
  const dst = get(to);
  if (!src || !dst) return { ok: false, reason: "unknown node" };
  const p = port ?? "out";
  if (!src.data.ports.includes(p)) return { ok: false, reason: `${from} has no port ${p}` };
  if (!dst.data.hasInput) return { ok: false, reason: `${to} takes no input (a source)` };
  if (edges.some((e) => e.source === from && e.target === to && (e.sourceHandle ?? "out") === p)) {
    return { ok: false, reason: "already wired" };
  }
  if (wouldCycle(edges, from, to)) return { ok: false, reason: `${from} -> ${to} would make a cycle` };
  return { ok: true };
}

export function makeNode(
  id: string,
  type: string,
  meta: TypeMeta | undefined,
  params: Record<string, unknown>,
  position: { x: number; y: number },
  name = "",
  extra: Record<string, unknown> = {},
  uiExtra: Record<string, unknown> = {},
): MwNode {
  const ports = portsFor(meta, params);
  const hasInput = meta ? meta.kind !== "source" : true;
  return {
    id,
    type: "mw",
    position,
    ...nodeGeometry(ports, hasInput),
    data: {
      type,
      params,
      name,
      kind: meta?.kind ?? "pure",
      ports,
      hasInput,
      extra,
      uiExtra,
    },
  };
}

export function makeEdge(from: string, port: string, to: string): MwEdge {
  const e: MwEdge = { id: edgeId(from, port, to), source: from, target: to, sourceHandle: port, targetHandle: INPUT_HANDLE };
  if (port === "error") e.className = "mw-error-edge";
  return e;
}

/** Layered placement for nodes without ``ui``: column = longest path from a source. */
export function autoLayout(doc: FlowDoc): Map<string, { x: number; y: number }> {
  const ids = doc.nodes.map((n) => n.id);
  const incoming = new Map<string, string[]>(ids.map((id) => [id, []]));
  for (const e of doc.edges ?? []) incoming.get(e.to)?.push(e.from);
  const depth = new Map<string, number>();
  const visiting = new Set<string>();
  const d = (id: string): number => {
    const known = depth.get(id);
    if (known !== undefined) return known;
    if (visiting.has(id)) return 0; // a cycle: the server will say so
    visiting.add(id);
    let best = 0;
    for (const p of incoming.get(id) ?? []) best = Math.max(best, d(p) + 1);
    visiting.delete(id);
    depth.set(id, best);
    return best;
  };
  const rows = new Map<number, number>();
  const out = new Map<string, { x: number; y: number }>();
  for (const id of ids) {
    const col = d(id);
    const row = rows.get(col) ?? 0;
    rows.set(col, row + 1);
    out.set(id, { x: 40 + col * 240, y: 40 + row * 110 });
  }
  return out;
}

export function docToGraph(doc: FlowDoc, metas: ReadonlyMap<string, TypeMeta>): { nodes: MwNode[]; edges: MwEdge[] } {
  const needLayout = doc.nodes.some((n) => !isPos(n.ui));
  const layout = needLayout ? autoLayout(doc) : null;
  const nodes = doc.nodes.map((n) => {
    const { id, type, params, name, ui, ...extra } = n;
    const pos = isPos(ui) ? { x: ui.x, y: ui.y } : layout!.get(id)!;
    const { x: _x, y: _y, ...uiExtra } = (typeof ui === "object" && ui !== null ? ui : {}) as Record<string, unknown>;
    return makeNode(id, type, metas.get(type), params ?? {}, pos, name ?? "", extra, uiExtra);
  });
  const edges = (doc.edges ?? []).map((e) => makeEdge(e.from, e.port ?? "out", e.to));
  return { nodes, edges };
}

function isPos(ui: unknown): ui is { x: number; y: number } {
  return (
    typeof ui === "object" && ui !== null &&
    typeof (ui as { x?: unknown }).x === "number" && typeof (ui as { y?: unknown }).y === "number"
  );
}

/** The document to validate and deploy: ``meta`` holds the flow-level keys (id, name, ui...). */
export function graphToDoc(meta: FlowMeta, nodes: readonly MwNode[], edges: readonly MwEdge[]): FlowDoc {
  const outNodes: FlowNodeDoc[] = nodes.map((n) => {
    const d: FlowNodeDoc = { id: n.id, type: n.data.type };
    if (n.data.name) d.name = n.data.name;
    d.params = n.data.params;
    Object.assign(d, n.data.extra);
    d.ui = { ...n.data.uiExtra, x: Math.round(n.position.x), y: Math.round(n.position.y) };
    return d;
  });
  const outEdges: FlowEdgeDoc[] = edges.map((e) => {
    const port = e.sourceHandle ?? "out";
    return port === "out" ? { from: e.source, to: e.target } : { from: e.source, to: e.target, port };
  });
  return { ...meta, nodes: outNodes, edges: outEdges };
}

/** ``inject1``, ``inject2``...: the first free id for a node type. */
export function freshId(type: string, taken: ReadonlySet<string>): string {
  const stem = type.replace(/Node$/, "").toLowerCase() || "node";
  for (let i = 1; ; i++) {
    const id = `${stem}${i}`;
    if (!taken.has(id)) return id;
  }
}

export const ID_RE = /^[A-Za-z0-9_.:-]{1,64}$/;

/** Copies of ``picked`` nodes and the edges among them, with fresh ids, shifted. */
export function cloneSelection(
  picked: readonly MwNode[],
  edges: readonly MwEdge[],
  taken: Set<string>,
  shift: { x: number; y: number },
): { nodes: MwNode[]; edges: MwEdge[] } {
  const rename = new Map<string, string>();
  const nodes = picked.map((n) => {
    const id = freshId(n.data.type, taken);
    taken.add(id);
    rename.set(n.id, id);
    return {
      ...n,
      id,
      selected: true,
      position: { x: n.position.x + shift.x, y: n.position.y + shift.y },
      data: { ...n.data, params: structuredClone(n.data.params) },
    };
  });
  const newEdges = edges
    .filter((e) => rename.has(e.source) && rename.has(e.target))
    .map((e) => makeEdge(rename.get(e.source)!, e.sourceHandle ?? "out", rename.get(e.target)!));
  return { nodes, edges: newEdges };
}
