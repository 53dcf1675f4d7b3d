/** Undo/redo of whole-graph snapshots (arrays are immutable, so a snapshot is two refs). */

export class UndoStack<S> {
  private past: S[] = [];
  private future: S[] = [];
  private lastKey: string | null = null;
  private lastAt = 0;

  constructor(private readonly limit = 200, private readonly now: () => number = () => Date.now()) {}

  /** Record ``before`` (the state a change starts from). Changes that share ``key`` within
   *  ``coalesceMs`` (typing in one field) make a single step. */
  push(before: S, key: string | null = null, coalesceMs = 1000): void {
    const t = this.now();
    if (key !== null && key === this.lastKey && t - this.lastAt < coalesceMs) {
      this.lastAt = t;
      return;
    }
    this.lastKey = key;
    this.lastAt = t;
    this.past.push(before);
    if (this.past.length > this.limit) this.past.shift();
    this.future = [];
  }

  undo(current: S): S | undefined {
    const prev = this.past.pop();
    if (prev === undefined) return undefined;
    this.future.push(current);
    this.lastKey = null;
    return prev;
  }

  redo(current: S): S | undefined {
    const next = this.future.pop();
    if (next === undefined) return undefined;
    this.past.push(current);
    this.lastKey = null;
    return next;
  }

  clear(): void {
    this.past = [];
    this.future = [];
    this.lastKey = null;
  }

  get canUndo(): boolean {
    return this.past.length > 0;
  }

  get canRedo(): boolean {
    return this.future.length > 0;
  }
}
