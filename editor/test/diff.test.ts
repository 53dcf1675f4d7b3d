import { describe, expect, it } from "vitest";
import { canonical, diffFlows, isEmpty } from "../src/lib/diff";
import type { FlowDoc } from "../src/lib/types";

const base: FlowDoc = {
  id: "f",
  name: "a",
  nodes: [
    { id: "tick", type: "InjectNode", params: { interval: 1, payload: { a: 1, b: 2 } }, ui: { x: 0, y: 0 } },
    { id: "mark", type: "ChangeNode", params: { rules: [] }, ui: { x: 100, y: 0 } },
    { id: "log", type: "LogNode", params: {}, ui: { x: 200, y: 0 } },
  ],
  edges: [{ from: "tick", to: "mark" }, { from: "mark", to: "log" }],
};

describe("diff before deploy", () => {
  it("names added, removed, changed and moved-only nodes, and wires", () => {
    const after: FlowDoc = {
      ...base,
      name: "b",
      nodes: [
        { id: "tick", type: "InjectNode", params: { payload: { b: 2, a: 1 }, interval: 2 }, ui: { x: 0, y: 0 } },
        { id: "mark", type: "ChangeNode", params: { rules: [] }, ui: { x: 150, y: 30 } },
        { id: "store", type: "StoreNode", params: {}, ui: { x: 300, y: 0 } },
      ],
      edges: [{ from: "tick", to: "mark" }, { from: "mark", to: "store", port: "out" }],
    };
    const d = diffFlows(base, after);
    expect(d.added).toEqual(["store"]);
    expect(d.removed).toEqual(["log"]);
    expect(d.changed).toEqual([{ id: "tick", fields: ["params.interval"] }]);
    expect(d.moved).toEqual(["mark"]);
    expect(d.edgesAdded).toEqual([{ from: "mark", to: "store", port: "out" }]);
    expect(d.edgesRemoved).toEqual([{ from: "mark", to: "log" }]);
    expect(d.flow).toEqual(["name"]);
  });
  it("sees no change in key order, an explicit default port, or an empty name", () => {
    const same: FlowDoc = JSON.parse(JSON.stringify(base));
    same.edges = [{ from: "tick", to: "mark", port: "out" }, { from: "mark", to: "log" }];
    same.nodes[2]!.name = "";
    expect(isEmpty(diffFlows(base, same))).toBe(true);
  });
  it("a new flow is all added", () => {
    const d = diffFlows(null, base);
    expect(d.added).toEqual(["tick", "mark", "log"]);
    expect(d.edgesAdded).toHaveLength(2);
  });
  it("canonical JSON sorts keys at every level", () => {
    expect(canonical({ b: [{ d: 1, c: 2 }], a: null })).toBe('{"a":null,"b":[{"c":2,"d":1}]}');
  });
});
