/** What a deploy would change: nodes added, removed, changed, moved only; wires. */
import type { FlowDoc, FlowEdgeDoc, FlowNodeDoc } from "./types";

export interface FlowChanges {
  added: string[];
  removed: string[];
  changed: { id: string; fields: string[] }[];
  moved: string[];
  edgesAdded: FlowEdgeDoc[];
  edgesRemoved: FlowEdgeDoc[];
  /** flow-level keys that differ (name, disabled...) */
  flow: string[];
}

/** JSON with sorted keys: equal values give equal strings. */
export function canonical(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonical).join(",")}]`;
  if (v && typeof v === "object") {
    const keys = Object.keys(v as object).filter((k) => (v as Record<string, unknown>)[k] !== undefined).sort();
    return `{${keys.map((k) => `${JSON.stringify(k)}:${canonical((v as Record<string, unknown>)[k])}`).join(",")}}`;
  }
  return JSON.stringify(v) ?? "null";
}

const edgeKey = (e: FlowEdgeDoc) => `${e.from}\u0000${e.port ?? "out"}\u0000${e.to}`;

function nodeFields(a: FlowNodeDoc, b: FlowNodeDoc): string[] {
  const keys = new Set([...Object.keys(a), ...Object.keys(b)]);
  keys.delete("ui");
  keys.delete("id");
  const fields: string[] = [];
  for (const k of [...keys].sort()) {
    if (k === "params") {
      const pa = a.params ?? {};
      const pb = b.params ?? {};
      for (const p of [...new Set([...Object.keys(pa), ...Object.keys(pb)])].sort()) {
        if (canonical(pa[p]) !== canonical(pb[p])) fields.push(`params.${p}`);
      }
    } else if (canonical(a[k] ?? (k === "name" ? "" : undefined)) !== canonical(b[k] ?? (k === "name" ? "" : undefined))) {
      fields.push(k);
    }
  }
  return fields;
}

/** ``before`` is what the daemon runs (null: a new flow), ``after`` what the editor holds. */
export function diffFlows(before: FlowDoc | null, after: FlowDoc): FlowChanges {
  const old = new Map((before?.nodes ?? []).map((n) => [n.id, n]));
  const now = new Map(after.nodes.map((n) => [n.id, n]));
  const res: FlowChanges = { added: [], removed: [], changed: [], moved: [], edgesAdded: [], edgesRemoved: [], flow: [] };
  for (const [id, n] of now) {
    const o = old.get(id);
    if (!o) {
      res.added.push(id);
      continue;
    }
    const fields = nodeFields(o, n);
    if (fields.length) res.changed.push({ id, fields });
    else if (canonical(o.ui ?? null) !== canonical(n.ui ?? null)) res.moved.push(id);
  }
  for (const id of old.keys()) if (!now.has(id)) res.removed.push(id);
  const oldEdges = new Map((before?.edges ?? []).map((e) => [edgeKey(e), e]));
  const newEdges = new Map((after.edges ?? []).map((e) => [edgeKey(e), e]));
  for (const [k, e] of newEdges) if (!oldEdges.has(k)) res.edgesAdded.push(e);
  for (const [k, e] of oldEdges) if (!newEdges.has(k)) res.edgesRemoved.push(e);
  const flowKeys = new Set([...Object.keys(before ?? {}), ...Object.keys(after)]);
  for (const k of ["nodes", "edges", "id", "rev", "source", "file"]) flowKeys.delete(k);
  for (const k of [...flowKeys].sort()) {
    if (canonical((before as Record<string, unknown> | null)?.[k]) !== canonical(after[k])) res.flow.push(k);
  }
  return res;
}

export function isEmpty(c: FlowChanges): boolean {
  return !c.added.length && !c.removed.length && !c.changed.length && !c.moved.length &&
    !c.edgesAdded.length && !c.edgesRemoved.length && !c.flow.length;
}
