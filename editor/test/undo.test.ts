import { describe, expect, it } from "vitest";
import { UndoStack } from "../src/lib/undo";

describe("undo/redo", () => {
  it("steps back and forth; a new change clears redo", () => {
    const u = new UndoStack<number>();
    u.push(0); // state 0 -> 1
    u.push(1); // 1 -> 2
    expect(u.undo(2)).toBe(1);
    expect(u.undo(1)).toBe(0);
    expect(u.undo(0)).toBeUndefined();
    expect(u.redo(0)).toBe(1);
    u.push(1); // 1 -> 5
    expect(u.canRedo).toBe(false);
    expect(u.undo(5)).toBe(1);
  });
  it("coalesces typing in one field into one step", () => {
    let t = 0;
    const u = new UndoStack<string>(100, () => t);
    u.push("", "params:a:topic");
    t += 200;
    u.push("x", "params:a:topic");
    t += 200;
    u.push("xy", "params:a:topic");
    t += 5000;
    u.push("xyz", "params:a:topic"); // a pause: a new step
    expect(u.undo("xyzw")).toBe("xyz");
    expect(u.undo("xyz")).toBe("");
    expect(u.canUndo).toBe(false);
  });
  it("keeps at most ``limit`` steps", () => {
    const u = new UndoStack<number>(3);
    for (let i = 0; i < 10; i++) u.push(i);
    expect([u.undo(10), u.undo(9), u.undo(8), u.undo(7)]).toEqual([9, 8, 7, undefined]);
  });
});
