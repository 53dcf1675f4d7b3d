import { describe, expect, it } from "vitest";
import { checkWire, cloneSelection, docToGraph, graphToDoc, makeEdge, makeNode, wouldCycle, type MwNode } from "../src/lib/graph";
import { typeMeta } from "../src/lib/schema";
import type { FlowDoc, TypeMeta } from "../src/lib/types";

const metas = new Map<string, TypeMeta>(
  ["InjectNode", "ChangeNode", "LogNode", "StoreNode"].map((t) => [t, typeMeta(t, {})]),
);
const node = (id: string, type: string): MwNode => makeNode(id, type, metas.get(type), {}, { x: 0, y: 0 });

describe("cycle check", () => {
  const e = (a: string, b: string) => ({ source: a, target: b });
  it("finds a loop through the graph, and a self-loop", () => {
    const edges = [e("a", "b"), e("b", "c")];
    expect(wouldCycle(edges, "c", "a")).toBe(true);
    expect(wouldCycle(edges, "a", "a")).toBe(true);
    expect(wouldCycle(edges, "a", "c")).toBe(false);
    expect(wouldCycle(edges, "c", "d")).toBe(false);
  });
  it("handles diamonds without false alarms", () => {
    const edges = [e("a", "b"), e("a", "c"), e("b", "d"), e("c", "d")];
    expect(wouldCycle(edges, "a", "d")).toBe(false);
    expect(wouldCycle(edges, "d", "a")).toBe(true);
  });
});

describe("wiring checks", () => {
  const nodes = [node("tick", "InjectNode"), node("mark", "ChangeNode"), node("log", "LogNode")];
  const edges = [makeEdge("tick", "out", "mark"), makeEdge("mark", "out", "log")];
  it("refuses a missing port, a source as target, duplicates and cycles", () => {
    expect(checkWire(nodes, edges, "mark", "nope", "log")).toEqual({ ok: false, reason: "mark has no port nope" });
    expect(checkWire(nodes, edges, "mark", "out", "tick").reason).toMatch(/takes no input/);
    expect(checkWire(nodes, edges, "tick", "out", "mark").reason).toBe("already wired");
    expect(checkWire(nodes, [...edges], "log", "error", "mark").reason).toMatch(/cycle/);
  });
  it("accepts the error port and a new wire", () => {
    expect(checkWire(nodes, edges, "mark", "error", "log").ok).toBe(true);
    expect(checkWire(nodes, edges, "tick", "out", "log").ok).toBe(true);
  });
});

describe("document <-> graph", () => {
  const doc: FlowDoc = {
    id: "f",
    name: "demo",
    disabled: false,
    nodes: [
      { id: "tick", type: "InjectNode", params: { interval: 1 }, ui: { x: 10, y: 20 } },
      { id: "mark", type: "ChangeNode", name: "Mark", params: { rules: [] }, ui: { x: 200, y: 20, nodered: { func: "return msg;" } }, note: "kept" },
      { id: "log", type: "LogNode", params: {} },
    ],
    edges: [{ from: "tick", to: "mark" }, { from: "mark", to: "log", port: "error" }],
  };
  it("round-trips, keeping unknown keys and writing per-node ui", () => {
    const g = docToGraph(doc, metas);
    expect(g.nodes.map((n) => n.position)[0]).toEqual({ x: 10, y: 20 });
    expect(g.edges[1]).toMatchObject({ source: "mark", target: "log", sourceHandle: "error", className: "mw-error-edge" });
    const { nodes: _n, edges: _e, ...meta } = doc;
    const back = graphToDoc(meta, g.nodes, g.edges);
    expect(back.nodes[1]).toEqual({ id: "mark", type: "ChangeNode", name: "Mark", params: { rules: [] }, note: "kept", ui: { x: 200, y: 20, nodered: { func: "return msg;" } } });
    expect(back.nodes[2]!.ui).toBeDefined(); // laid out
    expect(back.edges).toEqual(doc.edges);
    expect(back.name).toBe("demo");
  });
  it("lays out nodes without positions by depth", () => {
    const g = docToGraph({ id: "f", nodes: doc.nodes.map(({ ui: _u, ...n }) => n), edges: doc.edges }, metas);
    const x = Object.fromEntries(g.nodes.map((n) => [n.id, n.position.x]));
    expect(x["tick"]! < x["mark"]! && x["mark"]! < x["log"]!).toBe(true);
  });
  it("copies a selection with fresh ids and the wires inside it only", () => {
    const g = docToGraph(doc, metas);
    const taken = new Set(g.nodes.map((n) => n.id));
    const copy = cloneSelection(g.nodes.slice(0, 2), g.edges, taken, { x: 40, y: 40 });
    expect(copy.nodes.map((n) => n.id)).toEqual(["inject1", "change1"]);
    expect(copy.edges.map((e) => [e.source, e.target])).toEqual([["inject1", "change1"]]);
    expect(copy.nodes[0]!.position).toEqual({ x: 50, y: 60 });
  });
});
