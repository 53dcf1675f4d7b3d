/** A map whose readers subscribe to one key: a counter update re-renders only its node. */
import { useSyncExternalStore } from "react";

type Listener = () => void;

export class KeyedStore<V> {
  private values = new Map<string, V>();
  private listeners = new Map<string, Set<Listener>>();

  get(key: string): V | undefined {
    return this.values.get(key);
  }

  /** Set one value; listeners of that key only hear of it when ``equal`` says it changed. */
  set(key: string, value: V | undefined, equal: (a: V, b: V) => boolean = Object.is): boolean {
    const old = this.values.get(key);
    if (value === undefined) {
      if (old === undefined) return false;
      this.values.delete(key);
    } else {
      if (old !== undefined && equal(old, value)) return false;
      this.values.set(key, value);
    }
    this.listeners.get(key)?.forEach((fn) => fn());
    return true;
  }

  /** Replace every value: keys absent from ``entries`` are removed. Returns changed keys. */
  replaceAll(entries: Iterable<[string, V]>, equal?: (a: V, b: V) => boolean): string[] {
    const seen = new Set<string>();
    const changed: string[] = [];
    for (const [k, v] of entries) {
      seen.add(k);
      if (this.set(k, v, equal)) changed.push(k);
    }
    for (const k of [...this.values.keys()]) {
      if (!seen.has(k) && this.set(k, undefined)) changed.push(k);
    }
    return changed;
  }

  subscribe(key: string, fn: Listener): () => void {
    let set = this.listeners.get(key);
    if (!set) {
      set = new Set();
      this.listeners.set(key, set);
    }
    set.add(fn);
    return () => {
      set.delete(fn);
      if (set.size === 0) this.listeners.delete(key);
    };
  }

  listenerCount(key: string): number {
    return this.listeners.get(key)?.size ?? 0;
  }

  keys(): string[] {
    return [...this.values.keys()];
  }
}

export function useKeyed<V>(store: KeyedStore<V>, key: string): V | undefined {
  return useSyncExternalStore(
    (cb) => store.subscribe(key, cb),
    () => store.get(key),
  );
}
