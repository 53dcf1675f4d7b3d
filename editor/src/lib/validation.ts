/** Server validation errors -> the node (and param, and Lua line) they name. */
import type { FlowDoc, ValidationError } from "./types";
import { KeyedStore } from "./store";

export interface Located {
  byNode: Map<string, ValidationError[]>;
  flow: ValidationError[];
}

const WHERE_RE = /^nodes\[(\d+)\](?:\s*\(([^)]*)\))?(?:\.params\.([A-Za-z0-9_]+))?/;

export function locate(errors: readonly ValidationError[], doc: FlowDoc): Located {
  const ids = new Set(doc.nodes.map((n) => n.id));
  const byNode = new Map<string, ValidationError[]>();
  const flow: ValidationError[] = [];
  for (const e of errors) {
    let node = e.node && ids.has(e.node) ? e.node : undefined;
    let param = e.param;
    const m = WHERE_RE.exec(e.where ?? "");
    if (m) {
      if (!node && m[2] && ids.has(m[2])) node = m[2];
      if (!node) node = doc.nodes[Number(m[1])]?.id;
      if (!param && m[3]) param = m[3];
    }
    if (!param) {
      // msgspec: "missing required key `rules`"
      const rk = /required key `([A-Za-z0-9_]+)`/.exec(e.message);
      if (rk) param = rk[1];
    }
    if (!node) {
      // edges[i] names two nodes: show it on the wire's source
      const em = /^edges\[(\d+)\]/.exec(e.where ?? "");
      const edge = em ? doc.edges?.[Number(em[1])] : undefined;
      if (edge && ids.has(edge.from)) node = edge.from;
    }
    if (node) {
      const list = byNode.get(node) ?? [];
      list.push({ ...e, node, param });
      byNode.set(node, list);
    } else {
      flow.push(e);
    }
  }
  return { byNode, flow };
}

/** Errors per node id; a node component subscribes to its own id only. */
export const nodeErrors = new KeyedStore<ValidationError[]>();

const sameErrors = (a: ValidationError[], b: ValidationError[]) =>
  a.length === b.length && a.every((e, i) => e.message === b[i]!.message && e.param === b[i]!.param && e.line === b[i]!.line);

/** Warnings per node id (deploys, but maybe not what was meant). */
export const nodeWarnings = new KeyedStore<ValidationError[]>();

export function publishErrors(located: Located, warnings?: Located): void {
  nodeErrors.replaceAll(located.byNode.entries(), sameErrors);
  nodeWarnings.replaceAll((warnings?.byNode ?? new Map<string, ValidationError[]>()).entries(), sameErrors);
}

/** The message without what the editor shows beside it: ``script: lua: line 3: x`` at
 *  param ``script``, line 3 reads ``x``. */
export function shortMessage(e: ValidationError): string {
  let m = e.message;
  if (e.param && m.startsWith(`${e.param}: `)) m = m.slice(e.param.length + 2);
  if (e.line !== undefined) m = m.replace(/^(?:[\w.-]+: )?line \d+: /, "");
  return m;
}
