/** Live per-node counters, keyed ``flow/node``, fed by the events socket (or /status). */
import type { Counters } from "./types";
import { KeyedStore } from "./store";

export const sameCounters = (a: Counters, b: Counters): boolean =>
  a.in === b.in && a.out === b.out && a.errors === b.errors && a.dropped === b.dropped;

export function counterKey(flow: string, node: string): string {
  return `${flow}/${node}`;
}

function num(v: unknown): number {
  return typeof v === "number" && Number.isFinite(v) ? v : 0;
}

/** Apply one ``{"type":"counters","flows":{flow:{node:{in,out,errors,dropped}}}}`` batch. */
export function applyCounters(
  store: KeyedStore<Counters>,
  flows: Record<string, Record<string, Partial<Counters>> | undefined>,
): string[] {
  const changed: string[] = [];
  for (const [flow, nodes] of Object.entries(flows)) {
    if (!nodes || typeof nodes !== "object") continue;
    for (const [node, c] of Object.entries(nodes)) {
      if (!c || typeof c !== "object") continue;
      const value: Counters = {
        in: num(c.in),
        out: num(c.out),
        errors: num(c.errors),
        dropped: num(c.dropped),
      };
      const key = counterKey(flow, node);
      if (store.set(key, value, sameCounters)) changed.push(key);
    }
  }
  return changed;
}

export const counters = new KeyedStore<Counters>();
